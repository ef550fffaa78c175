//! dino-train: DINO self-distillation (Caron et al., "Emerging Properties in
//! Self-Supervised Vision Transformers", ICCV 2021) on libtorch.
pub mod algo_error;
pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod ema;
pub mod error;
pub mod flat;
pub mod knn_eval;
pub mod knn_features;
pub mod launch;
pub mod linear;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod pretrained;
pub mod scaler;
pub mod schedule;
pub mod step;
pub mod trainer;
