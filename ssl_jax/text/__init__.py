"""Text for the image-text methods: the SentencePiece tokenizer (imports no tensorflow)."""
