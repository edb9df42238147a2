"""Command-line interface (`manyheads ...`)."""
