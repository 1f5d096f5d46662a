"""The model: its architecture config and presets, generic layers, the X-CLIP modules, the CLIP tokenizer."""
