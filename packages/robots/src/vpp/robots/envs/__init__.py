"""Simulated benchmark tasks that policies are collected on and evaluated in (MetaWorld).

The MuJoCo arms are not here: they implement the `Robot` interface (`vpp.robots.drivers.sim`), so
the same control loop and safety filter drive them as drive the real arms. A benchmark task is
stepped directly, one action per step, as its benchmark defines it.
"""
