//! The `million` example of the library, unchanged, on mimalloc instead of
//! the system allocator: what the allocator alone changes in its memory and
//! fan-out figures.
//!
//! ```text
//! cargo run --release -p coalesce-bench --bin million_mimalloc -- [the example's options]
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../../examples/million.rs"]
mod million;

fn main() {
    million::main();
}
