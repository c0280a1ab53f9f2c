"""models: the backbone registry (each backbone, where its weights come from, its groups), checkpoints of trained
models, and prediction with them."""
