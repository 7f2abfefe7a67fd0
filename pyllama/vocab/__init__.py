"""The loaders that build a :class:`~pyllama.tokenizer.Tokenizer` from a vocabulary, one module
per kind of file: ``from_gguf`` (GGUF metadata: SentencePiece ``llama`` and byte-level ``gpt2``
vocabularies), ``from_llama2c`` (llama2.c ``tokenizer.bin``), ``from_sentencepiece``
(``.model`` files); ``common`` holds what they share. ``Tokenizer.from_file`` picks one.
"""
