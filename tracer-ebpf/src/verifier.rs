//! Comparisons that keep the verifier's state small.
//!
//! When a program branches on `a < b`, the verifier narrows the known ranges of both `a`
//! and `b`. In a loop, a value compared at every iteration (a word of the stack, a bound
//! loaded once) then reaches the loop head in a different state after each iteration and
//! no state can be pruned: the paths double per iteration and the program exceeds the
//! verifier's complexity limit. These helpers branch on a temporary derived from the
//! operands instead, so nothing is learnt about the operands themselves.

/// `a < b`, for values below 2^63 (user addresses, counts).
#[inline(always)]
pub fn below(a: u64, b: u64) -> bool {
    a.wrapping_sub(b) >> 63 != 0
}

/// `lo <= a < hi`, for values below 2^63.
#[inline(always)]
pub fn within(a: u64, lo: u64, hi: u64) -> bool {
    below(a.wrapping_sub(lo), hi.wrapping_sub(lo)) && !below(a, lo)
}
