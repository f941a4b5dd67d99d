/* SPDX-License-Identifier: Apache-2.0 */
/* The one monotonic clock (CLOCK_MONOTONIC) for code that runs outside a
 * loop or needs finer than loop_now_ms. */
#ifndef SHUNT_CORE_CLOCK_H
#define SHUNT_CORE_CLOCK_H

#include <stdint.h>

uint64_t clock_mono_ns(void);
uint64_t clock_mono_ms(void);

#endif
