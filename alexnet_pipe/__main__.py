"""`python -m alexnet_pipe ...` is the same as the `alexnet-pipe` console script."""
from alexnet_pipe_cli.main import cli

if __name__ == "__main__":
    cli(prog_name="alexnet-pipe")
