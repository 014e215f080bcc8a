"""Width and structured pruning: target shapes (``shapes``), activation importance (``importance``), learned masks
(``masks``) and the mask-learning loop (``training``)."""
