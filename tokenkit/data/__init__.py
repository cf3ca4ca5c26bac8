"""Input pipeline: record sources, encoding with both tokenizers, alignment, batching."""
