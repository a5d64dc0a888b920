"""orch benchmark: orch move against LXD 5.0 lxc move and raw rsync. Entry point: bench/run."""
