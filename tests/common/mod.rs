#![allow(dead_code)]
pub mod kvm_guest;
