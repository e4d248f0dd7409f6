"""One module per `sid-spark` subcommand; each registers itself with `sid_spark.cli.command`."""
