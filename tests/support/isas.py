"""The kernel sets this CPU can run, for tests that compare each set with the scalar reference."""


def available_isas(lib) -> list[tuple[str, int]]:
    """(name, PL_ISA_*) of every kernel set pyllama's C core (`lib`) can run here, scalar first."""
    best = lib.pl_cpu_isa()
    out = [("scalar", lib.PL_ISA_SCALAR)]
    if best in (lib.PL_ISA_AVX2, lib.PL_ISA_AVX512):
        out.append(("avx2", lib.PL_ISA_AVX2))
    if best == lib.PL_ISA_AVX512:
        out.append(("avx512", lib.PL_ISA_AVX512))
    if best == lib.PL_ISA_NEON:
        out.append(("neon", lib.PL_ISA_NEON))
    return out


def in_both_read_orders(lib, run) -> dict:
    """{1: run() with decode reading the weights AMD's way, 0: run() the others' way}
    (pl_set_amd_reads), the process's setting restored after."""
    before = lib.pl_set_amd_reads(1)
    try:
        out = {}
        for amd in (1, 0):
            lib.pl_set_amd_reads(amd)
            out[amd] = run()
        return out
    finally:
        lib.pl_set_amd_reads(before)
