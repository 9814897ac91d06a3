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

// [k][16 vec4 of rows] and [k][16 vec4 of tokens]
var<workgroup> Ws: array<vec4<f32>, 512>;
var<workgroup> Xs: array<vec4<f32>, 512>;

$DEQ

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row_base = wg.x * 64u;
    let tok_base = wg.y * 64u;
    let ty = lid / 16u;
    let tx = lid % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var u = 0u; u < P.units; u++) {
        for (var h = 0u; h < 2u; h++) {
            let p = lid + h * 256u;
            // weight tile: (row, j) pairs
            let wr = p / 8u;
            let j = p % 8u;
            let r = min(row_base + wr, P.rows - 1u);
            let gu = r * P.units + u;
            let w = deq4(gu / UPB, gu % UPB, j);
            for (var i = 0u; i < 4u; i++) {
                Ws[(4u * j + i) * 16u + wr / 4u][wr % 4u] = w[i];
            }
            // input tile: (token, group) pairs
            let xt = p / 8u;
            let g = p % 8u;
            let t = min(tok_base + xt, P.n_tok - 1u);
            let xv = X[P.x_off + t * P.ld_x + u * 8u + g];
            for (var i = 0u; i < 4u; i++) {
                Xs[(4u * g + i) * 16u + xt / 4u][xt % 4u] = xv[i];
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let a = Ws[k * 16u + ty];
            let b = Xs[k * 16u + tx];
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let rr = row_base + ty * 4u + i;
        if (rr >= P.rows) {
            continue;
        }
        let orow = P.row0 + rr;
        for (var c = 0u; c < 4u; c++) {
            let tok = tok_base + tx * 4u + c;
            if (tok >= P.n_tok) {
                continue;
            }
            let v = acc[i][c];
            let o = P.y_off + tok * P.ld_y + orow;
            if (P.mode == 0u) {
                Y[o] = v;
            } else if (P.mode == 1u) {
                Y[o] = Y[o] + v;
            } else if (P.mode == 3u) {
                let gt = Y[o + P.pad0];
                Y[o] = gt / (1.0 + exp(-gt)) * v;
            } else if ((i & 1u) == 0u) {
                let up = acc[i + 1u][c];
                Y[P.y_off + tok * P.ld_y + orow / 2u] = v / (1.0 + exp(-v)) * up;
            }
        }
    }
}
