// GELU(tanh)-gated FFN activation (gemma3): G[t][i] = gelu(gate) * up, as ggml's CPU geglu
// and `model::cpu::geglu`: 0 for gate <= -10, gate * up for gate >= 10, else GELU of the gate
// rounded to f16, the result rounded to f16 (ggml's f16 table), times up. One workgroup per
// token. SPLIT = false: H[t] holds interleaved (gate, up) rows (the fused gate_up matrix);
// true: up at H[t][0..n_ff], gate at H[t][n_ff..2 n_ff] (gate and up of different types).
struct Params {
    n: u32,
    n_tok: u32,
    eps: f32,
    pad: u32,
}
@group(0) @binding(0) var<storage, read> H: array<f32>;
@group(0) @binding(2) var<storage, read_write> G: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;

const SPLIT: bool = $SPLIT;

// r16(x): x rounded to the nearest f16 value (ties to even), as f32 (`R16_WGSL` in src/gpu/kernels.rs).
$R16

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.x;
    let hb = t * 2u * P.n;
    for (var i = lid; i < P.n; i += 256u) {
        var g: f32;
        var u: f32;
        if (SPLIT) {
            g = H[hb + P.n + i];
            u = H[hb + i];
        } else {
            g = H[hb + 2u * i];
            u = H[hb + 2u * i + 1u];
        }
        var y: f32;
        if (g <= -10.0) {
            y = 0.0;
        } else if (g >= 10.0) {
            y = g * u;
        } else {
            let x = r16(g);
            let c = 0.7978846 * x * (1.0 + 0.044715 * x * x);
            // tanh through exp (WGSL's tanh may lose accuracy near 0 on some drivers).
            let e = exp(-2.0 * abs(c));
            let th = sign(c) * (1.0 - e) / (1.0 + e);
            y = r16(0.5 * x * (1.0 + th)) * u;
        }
        G[t * P.n + i] = y;
    }
}
