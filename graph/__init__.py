"""ascend_v4.graph: whole-model compiled graphs (the forward of graph/forward.py) and their MINDIR export."""
