"""Analysis: comparing runs, picking the best, explaining what mattered, reproducing a run — in SQL."""
