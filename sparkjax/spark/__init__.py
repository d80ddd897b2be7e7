"""SPARK-PRM: verification formats, consensus and the stages that build and use generative process reward models."""
