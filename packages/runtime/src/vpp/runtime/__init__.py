"""vpp.runtime"""
