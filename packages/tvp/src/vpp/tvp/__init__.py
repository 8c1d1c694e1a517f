"""vpp.tvp"""
