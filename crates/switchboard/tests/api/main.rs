//! Integration tests: one binary, the real server over real HTTP.

mod admin;
mod delivery;
mod engine;
mod helpers;
mod restart;
mod twilio_sms;
mod twilio_voice;
