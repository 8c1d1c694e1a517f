"""vpp.data: torch-free LeRobotDataset v3 and video I/O, shared by training and by robot PCs."""
