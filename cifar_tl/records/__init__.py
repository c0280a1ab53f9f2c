"""records: a run's config and identity, making its record (`runner.run`), the record store (cache and committed
`results/`), the campaign that trains what the book is missing, and speed benchmarks."""
