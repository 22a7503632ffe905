"""The base models: loading (Hub id, folder, single file), the model families, and the built-in tiny model."""
