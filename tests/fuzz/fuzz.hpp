// The libFuzzer entry points each tests/fuzz/fuzz_<name>.cpp defines; the
// same object links into libFuzzer (make fuzz) and into replay.cpp (make
// test).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);
