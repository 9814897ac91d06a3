// Tiled dequantize-in-shader matrix × matrix for prompt batches: Y[t][row] = W[row] · X[t].
//
// A workgroup computes a 64-row × 64-token tile; per 32-wide step of K it dequantizes the
// 64 × 32 weight tile and loads the 32 × 64 input tile into workgroup memory, then each of
// the 256 threads accumulates a 4 × 4 block of outputs. Output modes as in matvec.wgsl.

struct Params {
    rows: u32,
    units: u32,
    d_off: u32,
    x_off: u32,
    ld_x: u32,
    y_off: u32,
    ld_y: u32,
    n_tok: u32,
    mode: u32,
    row0: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;

const UPB: u32 = $UPBu;

// [k][64 rows] and [k][64 tokens], as vec4s (16 per k): the inner loop reads one vec4 of
// each per k (2 loads per 16 FMAs instead of 8).
var<workgroup> WsV: array<vec4<f32>, 512>;
var<workgroup> XsV: array<vec4<f32>, 512>;

$DEQ

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row_base = wg.x * 64u;
    let tok_base = wg.y * 64u;
    let ty = lid / 16u;
    let tx = lid % 16u;
    // Accumulators are four vec4 variables, not an array: a dynamically indexed private
    // array would be placed in slow local memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var u = 0u; u < P.units; u++) {
        for (var h = 0u; h < 2u; h++) {
            let p = lid + h * 256u;
            // weight tile: (row, j) pairs, stored k-major
            let wr = p / 8u;
            let j = p % 8u;
            let r = min(row_base + wr, P.rows - 1u);
            let gu = r * P.units + u;
            let w = deq4(gu / UPB, gu % UPB, j);
            let wb = (4u * j) * 16u + wr / 4u;
            let wc = wr % 4u;
            WsV[wb][wc] = w.x;
            WsV[wb + 16u][wc] = w.y;
            WsV[wb + 32u][wc] = w.z;
            WsV[wb + 48u][wc] = w.w;
            // input tile: (token, group) pairs, stored k-major
            let xt = p / 8u;
            let g = p % 8u;
            let t = min(tok_base + xt, P.n_tok - 1u);
            let xv = X[P.x_off + t * P.ld_x + u * 8u + g];
            let xb = (4u * g) * 16u + xt / 4u;
            let xc = xt % 4u;
            XsV[xb][xc] = xv.x;
            XsV[xb + 16u][xc] = xv.y;
            XsV[xb + 32u][xc] = xv.z;
            XsV[xb + 48u][xc] = xv.w;
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let a = WsV[k * 16u + ty];
            let b = XsV[k * 16u + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let r0 = row_base + ty * 4u;
    store4(r0, tx, tok_base, acc0, acc1);
    store4(r0 + 1u, tx, tok_base, acc1, acc1);
    store4(r0 + 2u, tx, tok_base, acc2, acc3);
    store4(r0 + 3u, tx, tok_base, acc3, acc3);
}

// Store one row's 4 tokens; `up` is the next row's values (used by mode 2 on even rows).
fn store4(rr: u32, tx: u32, tok_base: u32, v4: vec4<f32>, up4: vec4<f32>) {
    if (rr >= P.rows) {
        return;
    }
    let orow = P.row0 + rr;
    let vs = array<f32, 4>(v4.x, v4.y, v4.z, v4.w);
    let us = array<f32, 4>(up4.x, up4.y, up4.z, up4.w);
    for (var c = 0u; c < 4u; c++) {
        let tok = tok_base + tx * 4u + c;
        if (tok >= P.n_tok) {
            continue;
        }
        let v = vs[c];
        let o = P.y_off + tok * P.ld_y + orow;
        if (P.mode == 0u) {
            Y[o] = v;
        } else if (P.mode == 1u) {
            Y[o] = Y[o] + v;
        } else if (P.mode == 3u) {
            let gt = Y[o + P.pad0];
            Y[o] = gt / (1.0 + exp(-gt)) * v;
        } else if ((orow & 1u) == 0u) {
            Y[P.y_off + tok * P.ld_y + orow / 2u] = v / (1.0 + exp(-v)) * us[c];
        }
    }
}
