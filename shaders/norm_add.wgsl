// Post-norm residual add (gemma3's post_attention_norm and post_ffw_norm):
// Y[t] += X[t] / sqrt(mean(X[t]^2) + eps) * w, one workgroup per token (rmsnorm.wgsl's sums).
struct Params {
    n: u32,
    n_tok: u32,
    eps: f32,
    pad: u32,
}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> NW: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let base = wg.x * P.n;
    var s = 0.0;
    for (var i = lid; i < P.n; i += 256u) {
        let v = X[base + i];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(red[0] / f32(P.n) + P.eps);
    for (var i = lid; i < P.n; i += 256u) {
        Y[base + i] = Y[base + i] + X[base + i] * inv * NW[i];
    }
}
