"""ascend_v4.graph: turns Cells into compiled graphs (forward, decode step, train step) and exports them."""
