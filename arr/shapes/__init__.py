"""The shapes world: the embedded default in which the whole method runs on a CPU (see DESIGN.md section 3)."""
