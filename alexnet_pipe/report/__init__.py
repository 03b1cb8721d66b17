"""What the tool shows: pictures of a trained network and its run (viz), the demo, and the benchmark drivers."""
