"""The thin click layer over `alexnet_pipe` (installed as `alexnet_pipe_cli`)."""
