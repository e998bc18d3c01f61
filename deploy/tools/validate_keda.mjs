// Validates the KEDA objects (keda.sh/v1alpha1) in the given YAML files against KEDA's CRD schemas,
// as compiled into @kubernetes-models/keda. Other objects are ignored (kubeconform checks them).
//   node deploy/tools/validate_keda.mjs FILE...      exit 1 when one is invalid or none was found
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import * as v1alpha1 from "@kubernetes-models/keda/keda.sh/v1alpha1";

let invalid = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const obj = doc.toJS();
    if (!obj || obj.apiVersion !== "keda.sh/v1alpha1") continue;
    checked++;
    const Model = v1alpha1[obj.kind];
    const name = `${file}: ${obj.kind} ${obj.metadata?.name ?? "(no name)"}`;
    if (!Model) {
      invalid++;
      console.log(`${name}: unknown KEDA kind`);
      continue;
    }
    try {
      new Model(obj).validate();
      console.log(`${name}: valid`);
    } catch (error) {
      invalid++;
      console.log(`${name}: INVALID: ${error.message}`);
    }
  }
}
console.log(`KEDA objects: ${checked} checked, ${invalid} invalid`);
process.exit(invalid || !checked ? 1 : 0);
