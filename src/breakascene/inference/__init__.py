"""Using a run: generation, variations, local editing, exports and attention views."""
