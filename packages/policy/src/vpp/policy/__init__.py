"""vpp.policy"""
