// cmocka for C++ test files: its header needs these C headers first.
#pragma once
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}
// clang-format on

#include <string>

#define assert_str_eq(a, b) assert_string_equal(std::string(a).c_str(), std::string(b).c_str())
