"""The shapes world: procedural scenes, tiny pretrained models and an exact pixel judge, in which the whole method
runs end to end on a CPU."""
