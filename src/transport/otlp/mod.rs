//! The OTLP/HTTP logs transport (in progress: the request encoding).

#![allow(dead_code)]

mod encode;
#[cfg(test)]
mod tests;
