// Stand-in for CUB's DeviceRadixSort in the CPU harness build (see ../../cuda_emu.h).
//
// SortPairs has CUB's contract: the first call with d_temp_storage == nullptr only reports the
// temporary storage size; the second sorts (key, value) pairs by the key bits [begin_bit, end_bit)
// as unsigned integers, stably (equal keys keep their input order, as an LSD radix sort does),
// writing the full keys and their values to the outputs. Bits outside the range are ignored for
// the order, as in CUB. The permutation lives in the caller's temporary storage, so a too small
// allocation is reported (cudaErrorInvalidValue) instead of going unnoticed.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <type_traits>

#include "../../cuda_emu.h"

namespace cub {

struct DeviceRadixSort {
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* d_keys_in,
                               KeyT* d_keys_out, const ValueT* d_values_in, ValueT* d_values_out, NumItemsT num_items,
                               int begin_bit = 0, int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0) {
    static_assert(std::is_integral<KeyT>::value && std::is_unsigned<KeyT>::value,
                  "the harness sorts unsigned integer keys only");
    (void)stream;
    const size_t n = num_items > 0 ? (size_t)num_items : 0;
    const size_t need = n * sizeof(uint32_t) + 16;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = need;
      return cudaSuccess;
    }
    if (temp_storage_bytes < need || begin_bit < 0 || end_bit > (int)(sizeof(KeyT) * 8) || begin_bit > end_bit ||
        n > 0xffffffffull)
      return cudaErrorInvalidValue;
    const int bits = end_bit - begin_bit;
    const KeyT mask = bits >= (int)(sizeof(KeyT) * 8) ? (KeyT)~(KeyT)0 : (KeyT)(((KeyT)1 << bits) - 1);
    uint32_t* perm = (uint32_t*)d_temp_storage;
    for (size_t i = 0; i < n; ++i) perm[i] = (uint32_t)i;
    auto digit = [&](uint32_t i) { return (KeyT)((d_keys_in[i] >> begin_bit) & mask); };
    std::stable_sort(perm, perm + n, [&](uint32_t a, uint32_t b) { return digit(a) < digit(b); });
    for (size_t i = 0; i < n; ++i) {
      d_keys_out[i] = d_keys_in[perm[i]];
      d_values_out[i] = d_values_in[perm[i]];
    }
    return cudaSuccess;
  }
};

}  // namespace cub
