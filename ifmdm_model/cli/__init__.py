"""The model side's console scripts (`ifmdm-train`, `ifmdm-infer`, `ifmdm-eval`, `ifmdm-tune`): parse, call the library, one-line errors."""
