// Cone-beam DRR ray marcher: the CUDA twin of vertedge/drr.py (`_render` / `_sample`).
//
// One thread per detector pixel; all K views in one launch (blockIdx.z = view). For view v and
// pixel (r, c) the ray runs from the source S_v to the detector point
// det_origin_v + r * row_step_v + c * col_step_v (world LPS mm). In continuous voxel-index space
// (x = i, y = j, z = k; integer values at voxel centres) it is clipped to the volume's box
// [-0.5, n - 0.5] per axis (outer voxel faces) with t in mm from the source, t in [0, |P - S|];
// the clipped chord is cut into n = ceil(len / step_mm) equal steps, HU is sampled trilinearly
// at each step's midpoint with coordinates clamped to [0, n - 1] (edge voxels extend), and
// out = mu_water * dt * sum(relative_mu(HU)), dimensionless, with vertedge/drr.py's intensity
// transform relative_mu(HU) = max(0, 1 + HU * PER_HU) + bone_gain * PER_HU * max(0, HU - bone_hu).
// A ray that misses gives 0.
//
// Constants shared with the host code are not written here: vertedge/drr_cuda.py
// (`kernel_defines`) passes them as -D options when CuPy compiles this file, and
// .ci/compile_kernels.sh asks it for the same options.
//
// Precision. Per-pixel ray setup (direction, normalization, slab clipping, n and dt) is done in
// double, as on the CPU: n = ceil(len / step_mm) is a discontinuous function of the chord length,
// and with float setup (|t| up to ~1000 mm, ulp ~6e-5 mm) roughly 1 ray in 10^4 gets n +- 1,
// which near a sharp bone edge can move that pixel by ~1e-3 relative (an estimate: midpoint rule
// at a trilinear kink; not seen on the test phantom). The setup is a few
// dozen double operations per ray (cheap on sm_90, 1:2 FP64 rate); define
// VERTEDGE_DRR_FLOAT_SETUP to do it in float on cards with slow FP64. The march itself is float:
// sample s sits at x0 + s * step (index space), x0 the first midpoint inside the box, so |x| is
// bounded by the volume size and the position error stays ~1e-5 voxel (~0.01 HU at a 1000
// HU/voxel edge); the sum is a float32 accumulator (relative error ~1e-6 over a few thousand
// samples). A NumPy emulation of this arithmetic against the CPU path on the test phantom gave
// max|diff|/max ~1e-6 (double setup) and ~1e-5 (float setup).
//
// Volume reads. Plain global loads through the read-only path (__ldg), eight per sample, on the
// same linear buffer the rest of the pipeline uses (no cudaArray copy of the volume). A 3D
// texture with hardware trilinear filtering would do one fetch per sample (clamp addressing at
// x + 0.5 reproduces `_sample`'s edge extension), but its weights are 9-bit fixed point with 8
// fractional bits: up to ~2 HU error per sample at a 1000 HU edge, a risk for the 1e-3
// agreement with the CPU path.
//
// Geometry lives in a small global array (one ViewGeom per view) rather than __constant__
// memory: a module-global constant buffer would be shared by concurrent renders on different
// streams, while a per-launch array is not; every thread of a block reads the same view, so the
// loads are uniform and served by one cache line broadcast either way.

#if !defined(VERTEDGE_PER_HU) || !defined(VERTEDGE_VIEW_GEOM_DOUBLES) || \
    !defined(VERTEDGE_MAX_THREADS_PER_BLOCK)
#error "compile with the -D options of vertedge.drr_cuda.kernel_defines()"
#endif

#ifdef VERTEDGE_DRR_FLOAT_SETUP
typedef float setup_t;
#else
typedef double setup_t;
#endif

// Explicit float/double math for setup_t, so neither precision depends on the C++ overloads of
// sqrt/fabs/ceil that nvcc and NVRTC headers provide (a float would otherwise risk promotion).
__device__ __forceinline__ float setup_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double setup_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float setup_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double setup_abs(double x) { return fabs(x); }
__device__ __forceinline__ float setup_ceil(float x) { return ceilf(x); }
__device__ __forceinline__ double setup_ceil(double x) { return ceil(x); }

// Per-view geometry, float64, laid out as VERTEDGE_VIEW_GEOM_DOUBLES doubles by vertedge/drr_cuda.py
// (`_geometry`).
struct ViewGeom {
    double src_idx[3];   // source in continuous voxel-index space: W (S - origin)
    double det0[3];      // detector pixel (0, 0) centre minus source, world mm
    double row_step[3];  // world mm per detector row
    double col_step[3];  // world mm per detector column
    double w2i[9];       // world_to_index W, row-major: index step per world mm
    double pad[3];       // keeps the record 192 bytes (a multiple of 64)
};
static_assert(sizeof(ViewGeom) == VERTEDGE_VIEW_GEOM_DOUBLES * sizeof(double),
              "struct ViewGeom must be the record vertedge/drr_cuda.py writes");

// Trilinear HU at continuous index (x, y, z), identical index logic to `_sample`: coordinates
// clamped to [0, n - 1]; lower corner min(floor, n - 2) (0 for a one-voxel axis); the upper
// corner is lower + 1, or the same voxel on a one-voxel axis (stride 0).
template <typename T>
__device__ __forceinline__ float sample_hu(const T* __restrict__ hu, float x, float y, float z,
                                           float xmax, float ymax, float zmax, int i0max,
                                           int j0max, int k0max, int ni, long long plane,
                                           int si, int sj, long long sk) {
    x = fminf(fmaxf(x, 0.0f), xmax);
    y = fminf(fmaxf(y, 0.0f), ymax);
    z = fminf(fmaxf(z, 0.0f), zmax);
    const int i0 = min(static_cast<int>(x), i0max);
    const int j0 = min(static_cast<int>(y), j0max);
    const int k0 = min(static_cast<int>(z), k0max);
    const float fx = x - static_cast<float>(i0);
    const float fy = y - static_cast<float>(j0);
    const float fz = z - static_cast<float>(k0);
    const T* p = hu + (static_cast<long long>(k0) * plane + static_cast<long long>(j0) * ni + i0);
    const float v000 = static_cast<float>(__ldg(p));
    const float v001 = static_cast<float>(__ldg(p + si));
    const float v010 = static_cast<float>(__ldg(p + sj));
    const float v011 = static_cast<float>(__ldg(p + sj + si));
    const float v100 = static_cast<float>(__ldg(p + sk));
    const float v101 = static_cast<float>(__ldg(p + sk + si));
    const float v110 = static_cast<float>(__ldg(p + sk + sj));
    const float v111 = static_cast<float>(__ldg(p + sk + sj + si));
    const float c00 = fmaf(fx, v001 - v000, v000);
    const float c01 = fmaf(fx, v011 - v010, v010);
    const float c10 = fmaf(fx, v101 - v100, v100);
    const float c11 = fmaf(fx, v111 - v110, v110);
    const float c0 = fmaf(fy, c01 - c00, c00);
    const float c1 = fmaf(fy, c11 - c10, c10);
    return fmaf(fz, c1 - c0, c0);
}

// One axis of the slab test, as in `_render`: a ray parallel to the slab (|d| < 1e-12 index
// units per mm) misses unless its origin lies within it; otherwise [t0, t1] shrinks to the slab.
__device__ __forceinline__ void clip_slab(setup_t o, setup_t d, setup_t lo, setup_t hi,
                                          setup_t& t0, setup_t& t1) {
    if (setup_abs(d) < setup_t(1e-12)) {
        if (o < lo || o > hi) t1 = setup_t(-1);
    } else {
        setup_t ta = (lo - o) / d;
        setup_t tb = (hi - o) / d;
        if (ta > tb) {
            const setup_t tmp = ta;
            ta = tb;
            tb = tmp;
        }
        t0 = t0 > ta ? t0 : ta;
        t1 = t1 < tb ? t1 : tb;
    }
}

// hu: (nk, nj, ni) C-contiguous HU; geom: n_views ViewGeom; out: (n_views, rows, cols) float32.
template <typename T>
__device__ __forceinline__ void drr_impl(const T* __restrict__ hu, int ni, int nj, int nk,
                                         const ViewGeom* __restrict__ geom, int rows, int cols,
                                         double step_mm, float mu_water, float bone_hu,
                                         float bone_gain, float* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y * blockDim.y + threadIdx.y;
    const int v = blockIdx.z;
    if (c >= cols || r >= rows) return;
    const long long pix = (static_cast<long long>(v) * rows + r) * cols + c;
    const ViewGeom& g = geom[v];

    // Ray P - S in world mm and its length: t runs in mm from the source.
    const setup_t px = setup_t(__ldg(&g.det0[0])) + setup_t(r) * setup_t(__ldg(&g.row_step[0])) +
                       setup_t(c) * setup_t(__ldg(&g.col_step[0]));
    const setup_t py = setup_t(__ldg(&g.det0[1])) + setup_t(r) * setup_t(__ldg(&g.row_step[1])) +
                       setup_t(c) * setup_t(__ldg(&g.col_step[1]));
    const setup_t pz = setup_t(__ldg(&g.det0[2])) + setup_t(r) * setup_t(__ldg(&g.row_step[2])) +
                       setup_t(c) * setup_t(__ldg(&g.col_step[2]));
    const setup_t norm = setup_sqrt(px * px + py * py + pz * pz);
    const setup_t ux = px / norm, uy = py / norm, uz = pz / norm;

    // Index-space displacement per mm along the ray, and the source in index space.
    setup_t w[9];
#pragma unroll
    for (int q = 0; q < 9; ++q) w[q] = setup_t(__ldg(&g.w2i[q]));
    const setup_t di = w[0] * ux + w[1] * uy + w[2] * uz;
    const setup_t dj = w[3] * ux + w[4] * uy + w[5] * uz;
    const setup_t dk = w[6] * ux + w[7] * uy + w[8] * uz;
    const setup_t oi = setup_t(__ldg(&g.src_idx[0]));
    const setup_t oj = setup_t(__ldg(&g.src_idx[1]));
    const setup_t ok = setup_t(__ldg(&g.src_idx[2]));

    setup_t t0 = 0, t1 = norm;
    const setup_t lo = setup_t(-0.5);
    clip_slab(oi, di, lo, setup_t(ni) - setup_t(0.5), t0, t1);
    clip_slab(oj, dj, lo, setup_t(nj) - setup_t(0.5), t0, t1);
    clip_slab(ok, dk, lo, setup_t(nk) - setup_t(0.5), t0, t1);
    if (t1 <= t0) {
        out[pix] = 0.0f;
        return;
    }
    const setup_t len = t1 - t0;
    const int n = static_cast<int>(setup_ceil(len / setup_t(step_mm)));
    const setup_t dt = len / setup_t(n);

    // First midpoint and per-step displacement in index space, in double, then float: the march
    // starts inside the box, not at the source ~1000 voxels away, so |x| <= volume size.
    const setup_t tm = t0 + setup_t(0.5) * dt;
    const float x0 = static_cast<float>(oi + tm * di);
    const float y0 = static_cast<float>(oj + tm * dj);
    const float z0 = static_cast<float>(ok + tm * dk);
    const float sx = static_cast<float>(dt * di);
    const float sy = static_cast<float>(dt * dj);
    const float sz = static_cast<float>(dt * dk);

    const float xmax = static_cast<float>(ni - 1);
    const float ymax = static_cast<float>(nj - 1);
    const float zmax = static_cast<float>(nk - 1);
    const int i0max = ni > 1 ? ni - 2 : 0;
    const int j0max = nj > 1 ? nj - 2 : 0;
    const int k0max = nk > 1 ? nk - 2 : 0;
    const long long plane = static_cast<long long>(ni) * nj;
    const int si = ni > 1 ? 1 : 0;
    const int sj = nj > 1 ? ni : 0;
    const long long sk = nk > 1 ? plane : 0;

    float acc = 0.0f;
    for (int s = 0; s < n; ++s) {
        const float fs = static_cast<float>(s);  // exact below 2^24 steps
        const float h = sample_hu(hu, fmaf(fs, sx, x0), fmaf(fs, sy, y0), fmaf(fs, sz, z0), xmax,
                                  ymax, zmax, i0max, j0max, k0max, ni, plane, si, sj, sk);
        // relative_mu (vertedge/drr.py)
        acc += fmaxf(0.0f, fmaf(h, VERTEDGE_PER_HU, 1.0f)) +
               bone_gain * VERTEDGE_PER_HU * fmaxf(0.0f, h - bone_hu);
    }
    out[pix] = acc * static_cast<float>(dt) * mu_water;
}

// C linkage: unmangled names for cupy.RawModule.get_function and for nvcc -c in CI.
extern "C" __global__ void __launch_bounds__(VERTEDGE_MAX_THREADS_PER_BLOCK)
    drr_int16(const short* __restrict__ hu, int ni, int nj, int nk,
              const ViewGeom* __restrict__ geom, int rows, int cols, double step_mm,
              float mu_water, float bone_hu, float bone_gain, float* __restrict__ out) {
    drr_impl<short>(hu, ni, nj, nk, geom, rows, cols, step_mm, mu_water, bone_hu, bone_gain, out);
}

extern "C" __global__ void __launch_bounds__(VERTEDGE_MAX_THREADS_PER_BLOCK)
    drr_float32(const float* __restrict__ hu, int ni, int nj, int nk,
                const ViewGeom* __restrict__ geom, int rows, int cols, double step_mm,
                float mu_water, float bone_hu, float bone_gain, float* __restrict__ out) {
    drr_impl<float>(hu, ni, nj, nk, geom, rows, cols, step_mm, mu_water, bone_hu, bone_gain, out);
}
