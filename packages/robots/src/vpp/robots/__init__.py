"""vpp.robots"""
