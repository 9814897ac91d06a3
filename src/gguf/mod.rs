//! GGUF container: validated mmap reader and streaming writer.
