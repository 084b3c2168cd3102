"""Model references (tiny, packaged, hub, local), merging with mergekit, and export."""
