"""Personalisation (paper Fig. 6): LoRA adapters on a trained run's stage 1 (`tune.stage1`) and stage 2 (`tune.stage2`), the adapter layers and files in `ifmdm_model.lora`."""
