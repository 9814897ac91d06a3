// Integer decode mat-vec (one token) with a last-workgroup epilogue (`KernelKey::MatVecQ8E`).
//
// The loop and reduction are the integer decode kernel's (shaders/matvec.wgsl with
// `matvec_q8_source`'s body, same sums in the same order); the store of modes 1 (residual
// add), 2 (SwiGLU over interleaved gate/up rows) and 3 (SwiGLU with the gate stored pad0
// values further) is matvec.wgsl's, through yld / yst. Then the hand-off (the "last
// workgroup" pattern): every workgroup, live rows or not, stores its outputs, runs
// `storageBarrier()` (naga: OpControlBarrier with device-scope AcquireRelease on storage
// memory, a release fence), and counts itself once on counter CNT[c]; the workgroup that
// sees the count reach NEED - 1 is the last for c: `storageBarrier()` again (acquire), then
// it reads the finished outputs, runs the epilogue and resets the counter for the
// next token. Nothing waits on another workgroup, so no forward-progress guarantee is
// needed. `Tune::lw_atomic` picks which accesses of Y are atomic (device scope, past any
// non-coherent cache): yld (the stores' own reads), yst (the stores), eld (the last
// workgroup's reads); with 2, Y is also bound at 8 as plain f32 (YF).

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
@group(0) @binding(1) var<storage, read> X: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<$YTY>;
@group(0) @binding(3) var<storage, read_write> CNT: array<atomic<u32>>;
@group(0) @binding(4) var<uniform> P: Params;
$EPI_BIND

const NR: u32 = $NRu;
const RPW: u32 = $RPWu;
const UPB: u32 = $UPBu;

var<workgroup> res: array<f32, RPW>;
var<workgroup> last_wg: u32;
$RED_DECL
$EPI_DECL

$DEQ

fn yld(i: u32) -> f32 {
    return $YLD;
}

fn yst(i: u32, v: f32) {
    $YST;
}

// The last workgroup's reads of the finished outputs.
fn eld(i: u32) -> f32 {
    return $ELD;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let warp = lid / 32u;
    let lane = lid % 32u;
    let rbase = wg.x * RPW + (lid / SPL) * NR;
$BODY
    workgroupBarrier();
    if (lid < RPW) {
        let rr = wg.x * RPW + lid;
        if (rr < P.rows) {
            let v = res[lid];
            let orow = P.row0 + rr;
            if (P.mode == 0u) {
                yst(P.y_off + orow, v);
            } else if (P.mode == 1u) {
                let o = P.y_off + orow;
                yst(o, yld(o) + v);
            } else if (P.mode == 3u) {
                let o = P.y_off + orow;
                let g = yld(o + P.pad0);
                yst(o, g / (1.0 + exp(-g)) * v);
            } else if ((orow & 1u) == 0u) {
                let up = res[lid + 1u];
                yst(P.y_off + orow / 2u, v / (1.0 + exp(-v)) * up);
            }
        }
    }
    storageBarrier();
    let c = $CIDX;
    if (lid == 0u) {
        last_wg = select(0u, 1u, atomicAdd(&CNT[c], 1u) == $NEED - 1u);
    }
    if (workgroupUniformLoad(&last_wg) == 0u) {
        return;
    }
    storageBarrier();
$EPI
    if (lid == 0u) {
        atomicStore(&CNT[c], 0u);
    }
}
