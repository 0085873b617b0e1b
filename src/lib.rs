//! Postern: an API gateway built on Pingora.
//!
//! Layers, left to right (a module imports only modules to its left):
//! `config`, `error`, `reply` → `context` → `router`, `upstream`, `plugins`, `tls`
//! → `snapshot` → `gateway`, `admin`, `lifecycle` → `app` → `main`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod aggregate;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod error;
pub mod error_pages;
pub mod gateway;
pub mod lifecycle;
pub mod observability;
pub mod plugins;
pub mod ratelimit;
pub mod redis;
pub mod reload;
pub mod reply;
pub mod router;
pub mod shared;
pub mod snapshot;
pub mod tls;
pub mod transform;
pub mod upstream;
