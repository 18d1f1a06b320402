"""Node agent, local scheduler, worker pool and worker main loop."""
