// Embedding look-up on the GPU: row T[t] of the token-embedding matrix (one chunk of its
// rows, `row0 .. row0 + rows`), dequantized with the type's `deq4` as the mat-vec and mat-mat
// kernels read the same weights, into row t of the residual stream Y (`units` 32-value
// units per row). Thread: one group of 4 values; wg.x: 256 groups, wg.y: token. Tokens whose
// id lies in another chunk are left to that chunk's dispatch.

struct Params {
    rows: u32,
    units: u32,
    d_off: u32,
    n_tok: u32,
    row0: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
    pad5: u32,
    pad6: u32,
}

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> T: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> P: Params;

const UPB: u32 = $UPBu;

$DEQ

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    let g = wg.x * 256u + lid;
    if (t >= P.n_tok || g >= P.units * 8u) {
        return;
    }
    let id = T[t];
    if (id < P.row0 || id - P.row0 >= P.rows) {
        return;
    }
    let gu = (id - P.row0) * P.units + g / 8u;
    Y[t * P.units * 8u + g] = deq4(gu / UPB, gu % UPB, g % 8u);
}
