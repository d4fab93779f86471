"""One module per ``tvmc`` subcommand; each registers itself with :func:`energon_tvm.tvmc.main.command`."""
