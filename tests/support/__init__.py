"""What the tests check pyllama against, and the inputs they build, kept apart from the tests.

Nothing here imports pyllama (except fake_llama, which stands in for it, and reference_sampling,
which takes its options as pyllama's SamplingParams):

- reference: an independent float64 numpy forward pass (the spec csrc/forward.c follows);
- tiny_models: tiny random GGUF and llama2.c models, written with the `gguf` package;
- hf_tiny_models: tiny random Hugging Face models of each family, converted by llama.cpp's
  own convert_hf_to_gguf.py (also a script, run by test_families in a child interpreter);
- reference_sampling: the numpy sampler, the definition csrc/sampling.c is tested against;
- isas: the kernel sets this CPU can run (tests compare each with the scalar reference);
- json_schemas: the JSON schemas of the constrained-output tests;
- fake_llama: a stand-in for pyllama.Llama with known logits, for the generation loop's tests.

conftest.py puts tests/ on sys.path, so a test imports these as `from support import reference`.
"""
